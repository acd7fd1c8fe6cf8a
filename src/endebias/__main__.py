from endebias.cli import main

raise SystemExit(main())

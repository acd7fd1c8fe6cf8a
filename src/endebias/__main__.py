from endebias.cli.main import main

raise SystemExit(main())

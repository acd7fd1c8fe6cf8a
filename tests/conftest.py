"""Suite-wide settings."""

import torch

# The tests use tiny tensors, where the cost is thread start-up and, on a busy machine,
# waiting for a second core: one intra-op thread makes them many times faster.
torch.set_num_threads(1)

"""Where and how a model runs: the rules every command follows.

- `policy`: device choice and what each precision name means on a CPU, CUDA or MPS (no torch at import);
- `speed`: running a loaded model fast (CPU allocator, threads, autocast, torch.compile, CUDA graphs);
- `processes`: this process's rank and device under torchrun, and the few collectives the callers need.
"""

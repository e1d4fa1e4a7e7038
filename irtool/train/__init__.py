"""`irtool train`: multi-task training of all-in-one restoration networks, from one CPU to many GPUs.

- `presets`: `TrainConfig` and the named recipes (standard library only, so the CLI can print them instantly);
- `losses`: per-sample L1, FFT-L1 and PSNR losses; `reweight`: Art's active task reweighting;
- `data`: task-labelled patches, augmentation and the epoch sampler; `sources`: a config's datasets;
- `loop`: `train(config, out)` and the per-step `Trainer` (DDP, checkpoints, resume, validation, logs);
- `checkpoint`: the run directory's files, written atomically (torchrun's environment and collectives are
  irtool.devices.processes, shared with multi-process restore and eval).

This package imports nothing heavy at import time; `from irtool.train.loop import train` loads torch.
"""

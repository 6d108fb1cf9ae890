"""Framework-free decoding: settings and batching, the generation config, sampling."""

"""One module per model, each with ``cases(device, quick) -> list[Case]``; all run by ``gmk bench``."""

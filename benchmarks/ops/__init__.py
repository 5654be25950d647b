"""One module per op family, each with ``cases(device, quick) -> list[Case]``; all run by ``gmk bench``."""

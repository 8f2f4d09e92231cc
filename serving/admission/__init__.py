"""Who gets in, how much, and in what order: keys, allow-lists, quotas, lanes."""

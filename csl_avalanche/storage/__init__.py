"""Files that survive a kill: atomic writes, the content-hashed tensor cache, and its
rank-0-writes variant for data-parallel runs."""

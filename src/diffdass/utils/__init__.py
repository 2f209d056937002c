"""Run directories, configuration, atomic file I/O and seeding."""

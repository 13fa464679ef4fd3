"""Multi-seed studies: statistics, tables and plots over repeated runs."""

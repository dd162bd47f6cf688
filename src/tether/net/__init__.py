"""asyncio adapters over the sans-I/O core; the one place OSError and ssl errors are translated."""

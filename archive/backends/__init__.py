"""Storage backends. Each module implements the primitives of
:class:`archive.interface.ArchiveInterface` for one kind of storage, and nothing else."""

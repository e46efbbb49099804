//! The embedded backend: one SQLite file (WAL) for jobs, keys and queues; images as files.

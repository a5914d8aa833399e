"""The durable run: its SQLite store, the people's review decisions kept in it, the run that
reads, sends, saves and decides, and its blocks spread over a Ray cluster (scale)."""

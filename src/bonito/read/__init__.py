"""Documents in: reading files, folders and hub datasets (sources), and cutting them into
contexts the generator can take (chunking)."""

"""RecordIO (MXNet byte format) codec and the dataset command-line tools."""

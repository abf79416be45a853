"""Reading inputs, the curated-table schema, and exactly-once writing of outputs."""

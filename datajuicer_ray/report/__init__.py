"""The HTML report of a curated folder (`datajuicer-ray inspect`): sampled rows with patch overlays and caption
diffs, summary plots, the run's config and counts, in one self-contained file."""

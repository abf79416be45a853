"""Helpers the tests share: input files, tables, drills, fault injection, the browser, the autoscaling cluster."""

"""Requests below both front ends (the CLI and the web view): their types and parsing."""

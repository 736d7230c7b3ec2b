"""The C templates (package data: installed as cnnc.templates)."""

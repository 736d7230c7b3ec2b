"""The .cnn grammar (package data: installed as cnnc.grammar)."""

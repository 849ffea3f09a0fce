"""Helpers shared by the tests: images and fixtures that need real files, built cheaply."""

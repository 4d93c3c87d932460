"""Tests of autonomous work."""

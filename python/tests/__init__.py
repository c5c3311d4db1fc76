"""Tests of the Snakepit Python runtime."""

"""Assignment 1: see handout.md."""

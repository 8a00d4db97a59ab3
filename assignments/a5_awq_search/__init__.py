"""Assignment 5: see handout.md."""

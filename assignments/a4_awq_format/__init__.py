"""Assignment 4: see handout.md."""

"""Assignment 3: see handout.md."""

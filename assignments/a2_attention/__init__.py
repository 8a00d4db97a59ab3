"""Assignment 2: see handout.md."""

"""centerloss-viz's machinery below the entry points (train.py, visualize.py).
The README's Architecture section gives one line per module and the layering."""

"""What keeps runs safe: paths kept inside the folders named, atomic commits and folder locks."""

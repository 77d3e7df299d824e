"""The Zarr trajectory store (see DESIGN.md section 6)."""

"""Objects through volumes and time-lapses: propagation of a mask from slice to slice,
tracking with divisions, and linking per-slice objects into 3D objects."""

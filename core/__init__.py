"""The torch-free core every stage shares: the sample recipe (read, box, crop, occlude, network input),
the landmark schema, NMSE, the evaluation protocol (face folders, splits, labels, occlusion conditions)
and file helpers. Needs numpy and OpenCV only; imports nothing else of this project."""

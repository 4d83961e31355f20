"""Export of generated molecules: SDF, XYZ and pictures."""

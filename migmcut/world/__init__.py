"""The tiny-shapes world: a procedural renderer, its caption grammar, a checker and a classifier."""

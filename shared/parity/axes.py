"""Axis glossary shared by both stacks, used in shape comments and einsum strings.

B batch · S source length · T target length · D model width · H heads · K head size
F feed-forward width · V vocabulary · L layers
"""

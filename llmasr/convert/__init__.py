"""Converters from other toolkits' model directories into llmasr's exported layout (`llmasr convert ...`)."""

"""Benchmarks (ROS-free): each writes JSON and, optionally, a PNG plot."""

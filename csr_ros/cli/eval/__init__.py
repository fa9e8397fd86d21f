"""Episode evaluation of csr_ros (ROS-free: bags are read with the pure-Python ``rosbags``).

episode (QA format, bag reading/writing, perception inputs from a params file), make_episode
(synthetic household episodes), embed (all-MiniLM-L6-v2 sentence embeddings), methods (csr,
csr_nofocus, memory, window, rag, full, oracle behind one interface) and run_eval (``csr-ros
eval``: the same stream through every method, recall and TTFT per question).
"""

"""csr_ros: an LLM as a ROS 2 robot policy over a cached KV state.

Cached State Representation (perception increments appended to a prefix-stable KV cache),
Asynchronous State Reconciliation (compaction off the hot path, swapped in at a frame
boundary) and multi-task inference (action chunks and streamed language from one cache).

The installed package merges this hand-written code with the messages generated from msg/
(``csr_ros.msg``). ``extend_path`` lets a source checkout that comes first on sys.path (tests
run from the repository root) still find the generated ``csr_ros.msg`` and its type-support
libraries in the installed copy.
"""

__path__ = __import__("pkgutil").extend_path(__path__, __name__)

__version__ = "0.1.0"

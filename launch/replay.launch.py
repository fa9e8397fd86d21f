"""Replay a recorded rosbag2 into the csr_ros graph on simulated time.

The graph (csr.launch.py) runs with use_sim_time true; ``csr_replay`` (csr_ros's own bag player,
built on the pure-Python ``rosbags`` reader, so it also works where rosbag2 is not installed)
publishes the bag's messages and /clock.

    ros2 launch csr_ros replay.launch.py bag:=/data/run1
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    graph = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(
            PathJoinSubstitution([FindPackageShare("csr_ros"), "launch", "csr.launch.py"])),
        launch_arguments={
            "params_file": LaunchConfiguration("params_file"),
            "model": LaunchConfiguration("model"),
            "namespace": LaunchConfiguration("namespace"),
            "log_level": LaunchConfiguration("log_level"),
            "use_sim_time": "true",
        }.items(),
    )
    replay = Node(
        package="csr_ros",
        executable="csr_replay",
        name="csr_replay",
        namespace=LaunchConfiguration("namespace"),
        arguments=[LaunchConfiguration("bag"), "--clock", "--rate", LaunchConfiguration("rate")],
        output="screen",
    )
    return LaunchDescription([
        DeclareLaunchArgument("bag", description="Path of the rosbag2 (MCAP or sqlite3) to replay."),
        DeclareLaunchArgument("rate", default_value="1.0", description="Replay speed factor (1.0: real time)."),
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution([FindPackageShare("csr_ros"), "config", "csr.yaml"]),
            description="ROS 2 parameters file for node csr."),
        DeclareLaunchArgument("model", default_value="", description="Model override (empty: the params file's)."),
        DeclareLaunchArgument("namespace", default_value="", description="Namespace of the graph and the player."),
        DeclareLaunchArgument("log_level", default_value="info", description="Logging level of the csr nodes."),
        graph,
        replay,
    ])

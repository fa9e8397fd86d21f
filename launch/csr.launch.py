"""Launch the csr_ros graph: one process (executable ``csr_node``) holding the inference node
``csr``, the reconciler node ``csr_reconciler`` (they share the KV memory) and the action clock
``csr_actions`` (see csr_ros/nodes/bringup.py for executors, threads and shutdown order).

    ros2 launch csr_ros csr.launch.py
    ros2 launch csr_ros csr.launch.py model:=/models/my-lm namespace:=robot1 use_sim_time:=true
    ros2 launch csr_ros csr.launch.py autostart:=false     # unconfigured: ros2 lifecycle set /csr configure

Without ROS launch (e.g. a venv with ROS from PyPI): ``csr-ros run`` (or ``ros2 run csr_ros csr_node``),
which load the same installed ``config/csr.yaml`` when given no ``--params-file``.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def _csr_node(context, *args, **kwargs):
    """The node action; the model override is added only when the argument is not empty, so the
    params file's model.model stays in force by default."""
    overrides = {"use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool),
                 "ros.autostart": ParameterValue(LaunchConfiguration("autostart"), value_type=bool)}
    model = LaunchConfiguration("model").perform(context)
    if model:
        overrides["model.model"] = model
    return [
        Node(
            package="csr_ros",
            executable="csr_node",
            name="csr",
            namespace=LaunchConfiguration("namespace"),
            parameters=[LaunchConfiguration("params_file"), overrides],
            ros_arguments=["--log-level", LaunchConfiguration("log_level")],
            output="screen",
            emulate_tty=True,
        )
    ]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution([FindPackageShare("csr_ros"), "config", "csr.yaml"]),
            description="ROS 2 parameters file for node csr (model, budget, perception inputs, ...)."),
        DeclareLaunchArgument(
            "model", default_value="",
            description="Model to load: 'embedded', a local Hugging Face folder or shape:<name>; "
                        "empty keeps the params file's model.model."),
        DeclareLaunchArgument(
            "namespace", default_value="",
            description="Namespace of the csr nodes and of their relative topics (csr/...)."),
        DeclareLaunchArgument(
            "use_sim_time", default_value="false", choices=["true", "false"],
            description="Use /clock (simulation or bag replay) instead of the system clock."),
        DeclareLaunchArgument(
            "autostart", default_value="true", choices=["true", "false"],
            description="Bring the lifecycle node csr to active (configure + activate); false leaves it "
                        "unconfigured for an external lifecycle manager (ros2 lifecycle set /csr configure)."),
        DeclareLaunchArgument(
            "log_level", default_value="info", choices=["debug", "info", "warn", "error", "fatal"],
            description="Logging level of the csr nodes."),
        OpaqueFunction(function=_csr_node),
    ])

"""A small ROS 2 bag player for fused point clouds: rosbags reads the bag, rclpy publishes.

``ros2 bag play`` is not installable here (../shared/notes/ros2-from-pypi.md), and the demo needs
more than it does: each cloud is published with its ORIGINAL header (stamp and frame), then the
player either waits until the segmenter's outputs for that stamp arrived (``wait_topics``; the
default of the CLI, so no cloud is dropped by the node's latest-only queue) or paces the clouds by
their stamps (``rate``: the bag's time between clouds divided by ``rate``, like ``ros2 bag play -r``).

Run::

    python -m demo.player data/demo/bags/synth0000_00 --topic /map/cloud --out-topic cloud_in
    python -m demo.player BAG --topic /map/cloud --rate 2.0 --clouds 0      # all clouds, 2x bag time

The message bytes are deserialised by rclpy itself (``rclpy.serialization.deserialize_message``),
so fields, point layout and header go out exactly as recorded.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from rosbags.rosbag2 import Reader
from sensor_msgs.msg import PointCloud2

from training.data.types import BAG_TOPICS

CLOUD_TYPE = "sensor_msgs/msg/PointCloud2"
QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.RELIABLE)

Stamp = tuple[int, int]  # (sec, nanosec) of a header stamp


def stamp_of(msg) -> Stamp:
    """(sec, nanosec) of a message's ``header.stamp``."""
    return int(msg.header.stamp.sec), int(msg.header.stamp.nanosec)


@dataclass
class BagCloud:
    """One recorded PointCloud2: its position among the topic's messages, bag time (ns) and the message."""

    index: int
    bag_ns: int
    msg: PointCloud2

    @property
    def stamp(self) -> Stamp:
        return stamp_of(self.msg)

    @property
    def num_points(self) -> int:
        return int(self.msg.width) * int(self.msg.height)


def pick_evenly(total: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``range(total)``, first and last included (count <= 0: all)."""
    if total <= 0:
        return []
    if count <= 0 or count >= total:
        return list(range(total))
    return sorted(set(np.round(np.linspace(0, total - 1, count)).astype(int).tolist()))


def read_clouds(bag: Path, topic: str, count: int = 0) -> list[BagCloud]:
    """The PointCloud2 messages of ``topic`` in ``bag`` (``count`` > 0: that many, spread evenly).

    Raises:
        ValueError: the topic is missing, is not PointCloud2, or holds no message.
    """
    with Reader(bag) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        if not conns:
            have = ", ".join(f"{c.topic} [{c.msgtype}]" for c in reader.connections)
            raise ValueError(f"{bag}: no topic {topic!r}; the bag has {have}")
        if any(c.msgtype != CLOUD_TYPE for c in conns):
            raise ValueError(f"{bag}: topic {topic!r} is {conns[0].msgtype}, expected {CLOUD_TYPE}")
        total = sum(c.msgcount for c in conns)
        keep = set(pick_evenly(total, count))
        clouds = []
        for i, (_, bag_ns, raw) in enumerate(reader.messages(connections=conns)):
            if i in keep:   # deserialise only what is played
                clouds.append(BagCloud(index=i, bag_ns=int(bag_ns), msg=deserialize_message(bytes(raw), PointCloud2)))
    if not clouds:
        raise ValueError(f"{bag}: topic {topic!r} has no messages")
    return clouds


def message_type(name: str):
    """The rclpy message class of ``pkg/msg/Name`` (or ``pkg.msg.Name``)."""
    parts = name.replace(".", "/").split("/")
    if len(parts) != 3 or parts[1] != "msg":
        raise ValueError(f"message type must look like pkg/msg/Name, got {name!r}")
    return getattr(importlib.import_module(f"{parts[0]}.msg"), parts[2])


def _never() -> str | None:
    """The default ``give_up`` of the waits: never a reason to stop waiting before the timeout."""
    return None


class RosSession:
    """An rclpy node on its own Context, spun by a background executor thread; ``close()`` ends it."""

    def __init__(self, name: str, namespace: str = ""):
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, namespace=namespace, context=self.context)
        self._executor = SingleThreadedExecutor(context=self.context)
        self._executor.add_node(self.node)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._spin, name=f"{name}_spin", daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set() and self.context.ok():
            self._executor.spin_once(timeout_sec=0.05)

    def close(self) -> None:
        """Stop spinning and leave the graph; again: nothing. The thread leaves its wait set before anything is
        destroyed (executor.shutdown() under a spinning thread once raised InvalidHandle there), and a spin
        thread left in the middleware at exit aborts the process."""
        if not self.context.ok():
            return
        self._stop.set()
        self.thread.join(timeout=5.0)
        self._executor.shutdown(timeout_sec=5.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)

    def __enter__(self) -> "RosSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class Received:
    """A message that arrived on a collected topic, with its arrival time (``time.perf_counter`` s)."""

    msg: object
    arrival: float


class StampCollector:
    """Subscribes to topics whose messages carry a header and keeps the latest message per (topic, stamp)."""

    def __init__(self, node, topics: dict[str, type], qos: QoSProfile = QOS):
        self.topics = dict(topics)
        self._received: dict[Stamp, dict[str, Received]] = {}
        self._cond = threading.Condition()
        self.subscriptions = {t: node.create_subscription(kind, t, lambda msg, t=t: self._store(t, msg), qos)
                              for t, kind in self.topics.items()}

    def _store(self, topic: str, msg) -> None:
        got = Received(msg, time.perf_counter())
        with self._cond:
            self._received.setdefault(stamp_of(msg), {})[topic] = got
            self._cond.notify_all()

    def forget(self, stamp: Stamp) -> None:
        """Drop what arrived for ``stamp`` (before the same stamp is published again)."""
        with self._cond:
            self._received.pop(stamp, None)

    def connected(self) -> bool:
        """Every collected topic has a matched publisher."""
        return all(s.get_publisher_count() > 0 for s in self.subscriptions.values())

    def wait(self, stamp: Stamp, topics: Sequence[str] | None = None, timeout: float = 60.0,
             give_up=_never) -> dict[str, Received]:
        """Block until every topic in ``topics`` (default: all) has a message stamped ``stamp``.

        Raises:
            TimeoutError: not within ``timeout`` s, or ``give_up()`` returned a reason (checked every 0.1 s).
        """
        topics = list(self.topics if topics is None else topics)
        deadline = time.monotonic() + timeout
        with self._cond:
            while not set(topics) <= set(self._received.get(stamp, {})):
                left = deadline - time.monotonic()
                why = give_up() or (f"{timeout:.0f} s passed" if left <= 0 else None)
                if why:
                    missing = sorted(set(topics) - set(self._received.get(stamp, {})))
                    raise TimeoutError(f"no {', '.join(missing)} for stamp {stamp[0]}.{stamp[1]:09d}: {why}")
                self._cond.wait(min(left, 0.1))
            return dict(self._received.pop(stamp))


@dataclass
class Played:
    """One published cloud: ``sent`` is the publish time (``time.perf_counter`` s); ``outputs`` by topic."""

    cloud: BagCloud
    sent: float
    outputs: dict[str, Received] = field(default_factory=dict)

    def round_trip_ms(self, topic: str) -> float:
        """Publish -> arrival of ``topic``'s output for this stamp, in ms."""
        return (self.outputs[topic].arrival - self.sent) * 1e3


class CloudPlayer:
    """Publishes bag clouds on ``topic`` with their recorded headers.

    With a ``collector`` and ``wait_topics``, each cloud waits for the outputs stamped like it before
    the next goes out; otherwise clouds are paced by their bag times divided by ``rate``.
    """

    def __init__(self, node, topic: str, collector: StampCollector | None = None,
                 wait_topics: Sequence[str] = (), rate: float = 1.0, timeout: float = 120.0, qos: QoSProfile = QOS):
        if rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        if wait_topics and collector is None:
            raise ValueError("waiting for outputs needs a StampCollector")
        self.publisher = node.create_publisher(PointCloud2, topic, qos)
        self.collector = collector
        self.wait_topics = tuple(wait_topics)
        self.rate = float(rate)
        self.timeout = float(timeout)

    def wait_until_connected(self, timeout: float = 60.0, give_up=_never) -> None:
        """Block until a subscriber matched the cloud topic and the awaited output topics have publishers.

        Raises:
            TimeoutError: not within ``timeout`` s, or ``give_up()`` returned a reason.
        """
        deadline = time.monotonic() + timeout

        def ready():
            return (self.publisher.get_subscription_count() > 0
                    and (not self.wait_topics or self.collector.connected()))

        while not ready():
            why = give_up()
            if why:
                raise TimeoutError(f"nobody subscribed to {self.publisher.topic_name}: {why}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"nobody subscribed to {self.publisher.topic_name} within {timeout:.0f} s")
            time.sleep(0.05)

    def publish(self, cloud: BagCloud) -> float:
        """Publish one cloud as recorded; returns the publish time (``time.perf_counter`` s)."""
        if self.collector is not None:
            self.collector.forget(cloud.stamp)
        sent = time.perf_counter()
        self.publisher.publish(cloud.msg)
        return sent

    def play(self, clouds: Iterable[BagCloud], give_up=_never) -> Iterator[Played]:
        """Publish the clouds in order, yielding each once its outputs arrived (or once it is sent when
        not waiting). The next cloud goes out only when the caller asks for it, so the caller may change
        things (e.g. parameters) between clouds."""
        previous_ns = None
        for cloud in clouds:
            ns = cloud.stamp[0] * 1_000_000_000 + cloud.stamp[1]
            if not self.wait_topics and previous_ns is not None and ns > previous_ns:
                time.sleep((ns - previous_ns) / 1e9 / self.rate)
            previous_ns = ns
            sent = self.publish(cloud)
            outputs = {}
            if self.wait_topics:
                outputs = self.collector.wait(cloud.stamp, self.wait_topics, self.timeout, give_up)
            yield Played(cloud=cloud, sent=sent, outputs=outputs)


# ---------------------------------------------------------------------------------------------
# CLI


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m demo.player", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bag", type=Path, help="rosbag2 folder or .mcap file")
    p.add_argument("--topic", default=BAG_TOPICS["cloud"], help="PointCloud2 topic in the bag")
    p.add_argument("--out-topic", default="cloud_in", help="topic to publish on")
    p.add_argument("--namespace", default="", help="namespace of the player node (relative topics resolve in it)")
    p.add_argument("--clouds", type=int, default=0, help="play this many clouds spread over the bag (0: all)")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--wait-for", default="instances",
                      help="after each cloud, wait for a message with its stamp on this topic ('' = do not wait)")
    pace.add_argument("--rate", type=float, default=None,
                      help="do not wait; pace clouds by bag time divided by RATE (like ros2 bag play -r)")
    p.add_argument("--wait-type", default="folk_ros_interfaces/msg/InstanceArray", help="message type of --wait-for")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for a subscriber / each output")
    args = p.parse_args(argv)
    if args.rate is not None:
        args.wait_for = ""
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        clouds = read_clouds(args.bag, args.topic, args.clouds)
        wait_type = message_type(args.wait_type) if args.wait_for else None
    except (ValueError, OSError, ImportError, AttributeError) as err:
        print(f"player: {err}", file=sys.stderr)
        return 1
    with RosSession("folk_bag_player", args.namespace) as ros:
        collector = StampCollector(ros.node, {args.wait_for: wait_type}) if args.wait_for else None
        player = CloudPlayer(ros.node, args.out_topic, collector, (args.wait_for,) if args.wait_for else (),
                             rate=args.rate or 1.0, timeout=args.timeout)
        try:
            player.wait_until_connected(args.timeout)
            print(f"player: {len(clouds)} clouds from {args.bag} {args.topic} -> {player.publisher.topic_name}")
            for played in player.play(clouds):
                sec, nsec = played.cloud.stamp
                line = f"cloud {played.cloud.index}: stamp {sec}.{nsec:09d}, {played.cloud.num_points:,} points"
                if args.wait_for:
                    line += f", {args.wait_for} after {played.round_trip_ms(args.wait_for):.1f} ms"
                print(line, flush=True)
        except TimeoutError as err:
            print(f"player: {err}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The infrastructure fixtures work for real: MongoDB over TCP and a RabbitMQ broker."""

import mongoengine
import pika


class Probe(mongoengine.Document):
    name = mongoengine.StringField(required=True, unique=True)
    tags = mongoengine.ListField(mongoengine.StringField())
    count = mongoengine.IntField(default=0)


def test_mongo_fixture_round_trips_a_document_over_tcp(mongo_url, mongo_db):
    assert mongo_url.startswith("mongodb://")
    Probe(name="a", tags=["x", "y"], count=3).save()
    loaded = Probe.objects.get(name="a")
    assert (loaded.tags, loaded.count) == (["x", "y"], 3)
    Probe.objects(name="a").update_one(inc__count=2)
    assert Probe.objects.get(name="a").count == 5
    raw = mongoengine.get_db()[Probe._get_collection_name()].find_one({"name": "a"})
    assert raw["count"] == 5


def test_rabbitmq_fixture_publishes_and_consumes_a_persistent_message(amqp_url):
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare("probe", durable=True)
        channel.basic_publish(
            "", "probe", b"hello", pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent), mandatory=True
        )
        method, properties, body = channel.basic_get("probe", auto_ack=False)
        assert body == b"hello"
        assert properties.delivery_mode == 2
        channel.basic_ack(method.delivery_tag)
        assert channel.queue_declare("probe", passive=True).method.message_count == 0
    finally:
        connection.close()

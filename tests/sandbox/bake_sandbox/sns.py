"""SNS: remember what was published to each topic, so tests can read bake's notifications."""

from moto.sns.models import Topic

from .state import STATE

_orig = Topic.publish


def publish(self, message, subject=None, *args, **kwargs):
    STATE.published.append({"topic": self.arn, "subject": subject, "message": message})
    return _orig(self, message, subject, *args, **kwargs)


Topic.publish = publish

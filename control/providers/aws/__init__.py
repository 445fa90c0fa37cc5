"""The `aws` provider: an EC2 Auto Scaling group's desired capacity."""

from control.providers.base import Field, pattern, timeout_field

FIELDS = (
    Field("asg", "the Auto Scaling group's name", required=True,
          check=pattern(r"[^\x00-\x1f]{1,255}", "must be an Auto Scaling group name (1-255 characters)")),
    Field("region", "the group's AWS region", default="us-east-1",
          check=pattern(r"[a-z]{2}(-[a-z]+)+-\d{1,2}", "must be an AWS region such as us-east-1")),
    timeout_field(10.0),
)
SECRETS_HINT = ("set the standard AWS environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE) "
                "or give the controller an instance role")

"""Amazon SQS service limits, named once so the code never hides a magic number."""

MAX_BATCH = 10  # messages per ReceiveMessage / SendMessageBatch / DeleteMessageBatch
MAX_WAIT_SECONDS = 20  # long-poll maximum
MAX_VISIBILITY_TIMEOUT = 12 * 60 * 60  # 12 h, counted from the first receive
MAX_DELAY_SECONDS = 15 * 60  # DelaySeconds maximum
MAX_MESSAGE_BYTES = 256 * 1024  # default maximum message size

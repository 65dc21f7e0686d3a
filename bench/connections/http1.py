"""What hold.py and churn.py both need: one HTTP/1.1 response read off a
keep-alive connection."""


async def read_response(reader):
    """Reads one response (head and Content-Length body); returns its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return status

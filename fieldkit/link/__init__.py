"""Links to devices: the message protocol over SSH, serial or a local subprocess."""

# berth %post: the buffer's parent and systemd told about the unit. Not enabled or started:
# the installed config's sink discards until one is chosen (/etc/berth/berth.toml says so).
# /var/lib/berth (the unit's StateDirectory), owned by berth; made here rather than shipped,
# so a removal never deletes undelivered logs (as the .deb's postinst).
install -d -o berth -g berth -m 0750 /var/lib/berth
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
fi

# berth %preun: $1 is how many berth packages remain; 0 is a removal (not an upgrade), which
# stops and disables berth. What the buffer holds stays in /var/lib/berth.
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl --no-reload disable --now berth.service || :
fi

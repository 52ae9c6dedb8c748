# The Ruby sample app: a tiny HTTP server (Ruby's standard library has no
# web server gem any more) that answers with its gem's greeting.
require "socket"
require "flynn_greeting"

server = TCPServer.new("0.0.0.0", Integer(ENV.fetch("PORT")))
puts "web starting on port #{ENV["PORT"]}"
$stdout.flush
loop do
  client = server.accept
  while (line = client.gets) && line != "\r\n"; end
  body = "hello from the ruby app: #{FlynnGreeting.hello}, ruby #{RUBY_VERSION}, bundle at #{Bundler.bundle_path}\n"
  client.write "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: #{body.bytesize}\r\nConnection: close\r\n\r\n#{body}"
  client.close
end
